# -*- test-case-name: tests.integration.test_acme_issuer -*-
"""
A throwaway ACME CA for integration tests: Debian's C{pebble}, with
C{pebble-challtestsrv} as its DNS server (every name resolves to
C{127.0.0.1}), both child processes of the test's reactor.

Use it from a trial async L{TestCase}::

    pebble = await startPebble(self, httpPort=httpPort, tlsPort=tlsPort)
    issuer = AcmeIssuer(reactor, pebble.directoryURL, "ops@example.com", key,
                        caFile=pebble.caFile)
    ...
    root = await pebble.root()   # the root that signed the issued chains

L{startPebble} registers the processes' stop as a cleanup, so the test
leaves no child and no socket behind.  pebble validates http-01 on
C{127.0.0.1:httpPort} and tls-alpn-01 on C{127.0.0.1:tlsPort}: a test
listens first (on port 0) and passes its ports here.  Several pebbles can
run at once; each gets its own free loopback ports.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import trustme
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.ssl import Certificate
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    readBody,
)

from tests.integration.support import (
    EXIT_TIMEOUT,
    START_TIMEOUT,
    ChildOutput,
    IIntegrationReactor,
    closedPorts,
    getReactor,
    waitFor,
    withTimeout,
)

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"


class Pebble:
    """
    One pebble and its DNS server, on free loopback ports.

    @ivar directoryURL: The ACME directory, C{https://127.0.0.1:PORT/dir}.
    @ivar managementURL: The management interface (roots, intermediates).
    @ivar caFile: The PEM CA that signed the HTTPS certificate of both:
        trust it (C{caFile} of the issuer).
    @ivar httpPort: Where pebble validates http-01.
    @ivar tlsPort: Where pebble validates tls-alpn-01.
    @ivar dnsPort: The DNS server pebble asks (C{pebble-challtestsrv}).
    """

    def __init__(
        self,
        reactor: IIntegrationReactor,
        directory: str,
        httpPort: int,
        tlsPort: int,
        *,
        authzReuse: int = 0,
        environment: dict[str, str] | None = None,
    ) -> None:
        """
        @param directory: An empty directory for the config and certificates.
        @param authzReuse: C{PEBBLE_AUTHZREUSE}: the percentage of new
            orders that get an account's valid authorizations back.
        @param environment: More environment for pebble (C{PEBBLE_*}).
        """
        self.reactor = reactor
        self.directory = directory
        self.httpPort = httpPort
        self.tlsPort = tlsPort
        self.authzReuse = authzReuse
        self.environment = dict(environment or {})
        # Four different ports: picked one at a time, two could be the same
        # (pebble then failed to bind one that its DNS server had taken).
        (
            self.listenPort,
            self.managementPort,
            self.dnsPort,
            self.dnsManagementPort,
        ) = closedPorts(4)
        self.directoryURL = f"https://127.0.0.1:{self.listenPort}/dir"
        self.managementURL = f"https://127.0.0.1:{self.managementPort}"
        self.caFile = os.path.join(directory, "ca.pem")
        self.configFile = os.path.join(directory, "pebble-config.json")
        self._ca: Any = None
        self._pebble: ChildOutput | None = None
        self._dns: ChildOutput | None = None
        self._transports: list[tuple[ChildOutput, IProcessTransport]] = []

    @property
    def output(self) -> str:
        """
        What both children wrote so far, for failure messages.
        """
        parts = []
        for child in (self._dns, self._pebble):
            if child is not None:
                text = child.output.decode("utf-8", "replace")
                parts.append(f"--- {child.name}:\n{text}")
        return "\n".join(parts)

    def _writeFiles(self) -> None:
        """
        Make the CA, pebble's HTTPS certificate for C{localhost} and
        C{127.0.0.1}, and its config file.
        """
        os.makedirs(self.directory, exist_ok=True)
        self._ca = trustme.CA()
        leaf = self._ca.issue_cert("localhost", "127.0.0.1")
        certFile = os.path.join(self.directory, "cert.pem")
        keyFile = os.path.join(self.directory, "key.pem")
        self._ca.cert_pem.write_to_path(self.caFile)
        leaf.cert_chain_pems[0].write_to_path(certFile)
        leaf.private_key_pem.write_to_path(keyFile)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.listenPort}",
                "managementListenAddress": f"127.0.0.1:{self.managementPort}",
                "certificate": certFile,
                "privateKey": keyFile,
                "httpPort": self.httpPort,
                "tlsPort": self.tlsPort,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        with open(self.configFile, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> ChildOutput:
        """
        Start one child in the work directory.
        """
        child = ChildOutput(name)
        transport = self.reactor.spawnProcess(
            child, argv[0], argv, env=env, path=self.directory
        )
        self._transports.append((child, transport))
        return child

    async def _waitOutput(self, child: ChildOutput, text: bytes) -> None:
        """
        Wait until C{child} writes C{text}; fail with the output if it ends
        first or takes longer than L{START_TIMEOUT}.
        """
        try:
            await waitFor(
                lambda: text in child.output or not child.running,
                START_TIMEOUT,
                f"{child.name} writing {text!r}",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.output}") from None
        if text not in child.output:
            raise AssertionError(
                f"{child.name} ended with {child.exitCode}\n{self.output}"
            )

    def prepare(self) -> None:
        """
        Write the CA, pebble's certificate and its config now, so that
        L{caFile} exists before pebble runs (a proxy configured with it can
        then start first, and find the CA unreachable).  L{start} does it
        itself when this was not called.
        """
        if self._ca is None:
            self._writeFiles()

    async def start(self) -> None:
        """
        Start the DNS server, then pebble, and return once pebble's
        directory answers over HTTPS.
        """
        self.prepare()
        basic = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        self._dns = self._spawn(
            "pebble-challtestsrv",
            [
                CHALLTESTSRV,
                "-dns01",
                f"127.0.0.1:{self.dnsPort}",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{self.dnsManagementPort}",
            ],
            basic,
        )
        await self._waitOutput(self._dns, b"Starting challenge servers")
        env = {
            **basic,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": str(self.authzReuse),
            **self.environment,
        }
        self._pebble = self._spawn(
            "pebble",
            [
                PEBBLE,
                "-config",
                self.configFile,
                "-dnsserver",
                f"127.0.0.1:{self.dnsPort}",
                "-strict=false",
            ],
            env,
        )
        await self._waitOutput(self._pebble, b"ACME directory available at")
        deadline = self.reactor.seconds() + START_TIMEOUT
        problem = ""
        while self.reactor.seconds() < deadline and self._pebble.running:
            try:
                document = json.loads(await self.fetch(self.directoryURL))
            except Exception as e:
                problem = str(e)
            else:
                if isinstance(document, dict) and "newOrder" in document:
                    return
                problem = f"not a directory: {document!r}"
            await deferLater(self.reactor, 0.1, lambda: None)
        raise AssertionError(
            f"pebble's directory does not answer: {problem}\n{self.output}"
        )

    async def fetch(self, url: str) -> bytes:
        """
        GET C{url} (pebble's directory or management interface), trusting
        L{caFile}; fail unless the answer is 200.
        """
        with open(self.caFile, "rb") as f:
            trustRoot = Certificate.loadPEM(f.read())
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        agent = Agent(
            self.reactor,
            contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trustRoot),
            connectTimeout=5,
            pool=pool,
        )
        try:
            response = await withTimeout(
                agent.request(b"GET", url.encode("ascii")), EXIT_TIMEOUT, f"GET {url}"
            )
            body: bytes = await withTimeout(
                readBody(response), EXIT_TIMEOUT, f"the body of {url}"
            )
        finally:
            await pool.closeCachedConnections()
        if response.code != 200:
            raise AssertionError(f"GET {url}: {response.code} {body[:200]!r}")
        return body

    async def root(self) -> bytes:
        """
        The PEM root that signs this pebble's chains (made anew at every
        start).
        """
        return await self.fetch(f"{self.managementURL}/roots/0")

    async def intermediate(self) -> bytes:
        """
        The PEM intermediate that signs this pebble's leaves.
        """
        return await self.fetch(f"{self.managementURL}/intermediates/0")

    async def stop(self) -> None:
        """
        Stop both children (SIGTERM, then SIGKILL after L{EXIT_TIMEOUT})
        and wait until both have ended.
        """
        for child, transport in self._transports:
            if child.running:
                try:
                    transport.signalProcess("TERM")
                except ProcessExitedAlready:
                    pass
        pending = [child.ended for child, _ in self._transports if child.running]
        if not pending:
            return
        try:
            await withTimeout(DeferredList(pending), EXIT_TIMEOUT, "pebble stopping")
        except TimeoutError:
            for child, transport in self._transports:
                if child.running:
                    try:
                        transport.signalProcess("KILL")
                    except ProcessExitedAlready:
                        pass
            await DeferredList(
                [child.ended for child, _ in self._transports if child.running]
            )


async def startPebble(
    testCase: TestCase,
    httpPort: int,
    tlsPort: int,
    *,
    authzReuse: int = 0,
    environment: dict[str, str] | None = None,
) -> Pebble:
    """
    Start a L{Pebble} for C{testCase} in a fresh temporary directory; it is
    stopped at the test's cleanup (also when start-up fails).  Skip the
    test when pebble is not installed.

    @param httpPort: Where pebble validates http-01 (on 127.0.0.1).
    @param tlsPort: Where pebble validates tls-alpn-01 (on 127.0.0.1).
    """
    pebble = newPebble(
        testCase, httpPort, tlsPort, authzReuse=authzReuse, environment=environment
    )
    await pebble.start()
    return pebble


def newPebble(
    testCase: TestCase,
    httpPort: int,
    tlsPort: int,
    *,
    authzReuse: int = 0,
    environment: dict[str, str] | None = None,
) -> Pebble:
    """
    A L{Pebble} for C{testCase} in a fresh temporary directory, not started
    yet (its L{Pebble.directoryURL} refuses connections until
    L{Pebble.start}); it is stopped at the test's cleanup.  Fail the test
    when pebble is not installed (make test installs it).  L{startPebble} is this, then
    L{Pebble.start}.
    """
    for program in (PEBBLE, CHALLTESTSRV):
        if shutil.which(program) is None:
            testCase.fail(f"{program} is not installed (apt-get install pebble)")
    pebble = Pebble(
        getReactor(),
        os.path.abspath(testCase.mktemp()),
        httpPort,
        tlsPort,
        authzReuse=authzReuse,
        environment=environment,
    )
    testCase.addCleanup(lambda: Deferred.fromCoroutine(pebble.stop()))
    return pebble
